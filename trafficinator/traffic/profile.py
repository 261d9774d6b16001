"""The traffic profile: every knob that shapes generated traffic.

The Django ``Preset`` model has the same field names and builds a profile with
``Profile(**values)``; ``validate()`` returns (field, message) pairs that the form
layer shows as field errors.

Probabilities named ``*_probability`` are shares of ALL ordinary visits (as in the
original tool: "10% of visits have a site search"). A bounce has no interaction at all,
so each of them must fit in the non-bounce share (1 - bounce_share); the generator
applies them to non-bounce visits as ``p / (1 - bounce_share)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from .clock import resolve_timezone

DEVICES = ("desktop", "mobile", "tablet")
PERSONAS = ("researcher", "buyer", "casual")
CHANNELS = ("search", "social", "websites", "campaign")
DAILY_CURVES = ("default", "business", "evening", "flat")
CAMPAIGN_PARAM_STYLES = ("mtm", "utm", "pk")

# A pause of 30 minutes or more ends the visit in Matomo, so a "pause between page
# views" must stay below it.
MAX_PAUSE_SECONDS = 1799.0
MIX_TOLERANCE = 0.01

_CURRENCY = re.compile(r"^[A-Z]{3}$")

_PROBABILITY_FIELDS = (
    "site_search_probability",
    "outlinks_probability",
    "downloads_probability",
    "click_events_probability",
    "random_events_probability",
    "ecommerce_probability",
    "cart_abandonment_probability",
    "goal_probability",
    "content_impressions_probability",
)


def _frozen_mapping(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(values))


def _mix(**shares: float) -> Any:  # a dataclass field
    return field(default_factory=lambda: _frozen_mapping(shares), hash=False)


@dataclass(frozen=True)
class Profile:
    """How much traffic, and what it looks like. Defaults give a plausible small shop."""

    visits_per_day: int = 1000
    pageviews_min: int = 2
    pageviews_max: int = 4
    visit_duration_min: float = 0.5  # minutes
    visit_duration_max: float = 3.0  # minutes
    pause_min: float = 5.0  # seconds between page views
    pause_max: float = 60.0
    concurrency: int = 10  # used by the sender, carried here with the preset
    site_search_probability: float = 0.10
    outlinks_probability: float = 0.05
    downloads_probability: float = 0.03
    click_events_probability: float = 0.15
    random_events_probability: float = 0.08
    ecommerce_probability: float = 0.02
    direct_traffic_share: float = 0.40
    randomize_countries: bool = False
    ecommerce_order_value_min: Decimal = Decimal("5.00")
    ecommerce_order_value_max: Decimal = Decimal("99.99")
    ecommerce_items_min: int = 1
    ecommerce_items_max: int = 5
    ecommerce_tax_rate: Decimal = Decimal("0.25")
    ecommerce_shipping_options: tuple[Decimal, ...] = field(
        default=(Decimal("0"), Decimal("4.99"), Decimal("9.99"), Decimal("19.99"))
    )
    currency: str = "SEK"
    timezone: str = "CET"

    # Beyond the original tool. Defaults follow docs/realism.md.
    bounce_share: float = 0.45  # ecommerce median 47%, "about half" overall
    returning_visitor_share: float = 0.35  # GA benchmark: 63% new visits
    logged_in_share: float = 0.10  # of returning visitors; they send `uid`
    device_mix: Mapping[str, float] = _mix(desktop=0.43, mobile=0.53, tablet=0.04)
    persona_mix: Mapping[str, float] = _mix(researcher=0.25, buyer=0.15, casual=0.60)
    daily_curve: str = "default"
    # Shares of the non-direct visits.
    channel_mix: Mapping[str, float] = _mix(search=0.55, social=0.15, websites=0.15, campaign=0.15)
    campaign_param_style: str = "mtm"  # mtm_* | utm_* | pk_* in landing URLs
    cart_abandonment_probability: float = 0.05  # ~70% of carts never become orders
    goal_probability: float = 0.03
    content_impressions_probability: float = 0.10
    page_performance: bool = True  # pf_* timings on page views
    client_hints: bool = True  # `uadata` for Chromium browsers

    def __post_init__(self) -> None:
        # Coerce what forms and JSON hand us; anything that does not coerce is kept as
        # is so validate() can name it instead of the constructor raising.
        for name in ("device_mix", "persona_mix", "channel_mix"):
            value = getattr(self, name)
            if isinstance(value, Mapping) and not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, _frozen_mapping(value))
        for name in (
            "ecommerce_order_value_min",
            "ecommerce_order_value_max",
            "ecommerce_tax_rate",
        ):
            object.__setattr__(self, name, _to_decimal(getattr(self, name)))
        object.__setattr__(self, "ecommerce_shipping_options", _to_decimal_tuple(self.ecommerce_shipping_options))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.field_names()}
        for name in ("device_mix", "persona_mix", "channel_mix"):
            values[name] = dict(values[name])
        return values

    @property
    def non_bounce_share(self) -> float:
        return 1.0 - self.bounce_share

    def validate(self) -> list[tuple[str, str]]:
        """Every problem as (field, human message); an empty list means usable."""
        problems: list[tuple[str, str]] = []
        add = problems.append

        _check_int(problems, self, "visits_per_day", 1, 100_000_000)
        _check_int(problems, self, "pageviews_min", 1, 500)
        _check_int(problems, self, "pageviews_max", 1, 500)
        _check_number(problems, self, "visit_duration_min", 0.0, 24 * 60)
        _check_number(problems, self, "visit_duration_max", 0.0, 24 * 60)
        _check_number(problems, self, "pause_min", 0.0, MAX_PAUSE_SECONDS)
        _check_number(problems, self, "pause_max", 0.0, MAX_PAUSE_SECONDS)
        _check_int(problems, self, "concurrency", 1, 100_000)
        _check_ordered(problems, self, "pageviews_min", "pageviews_max")
        _check_ordered(problems, self, "visit_duration_min", "visit_duration_max")
        _check_ordered(problems, self, "pause_min", "pause_max")

        for name in (
            *_PROBABILITY_FIELDS,
            "direct_traffic_share",
            "bounce_share",
            "returning_visitor_share",
            "logged_in_share",
        ):
            _check_number(problems, self, name, 0.0, 1.0)
        if _is_number(self.bounce_share) and 0 <= self.bounce_share <= 1:
            room = 1.0 - self.bounce_share
            for name in _PROBABILITY_FIELDS:
                value = getattr(self, name)
                if _is_number(value) and 0 <= value <= 1 and value > room + 1e-9:
                    add(
                        (
                            name,
                            f"cannot exceed the non-bounce share {room:.2f} "
                            "(1 - bounce_share): a bounce has no other interaction",
                        )
                    )
            buying = self.ecommerce_probability, self.cart_abandonment_probability
            if all(_is_number(v) for v in buying) and sum(buying) > room + 1e-9:
                add(
                    (
                        "cart_abandonment_probability",
                        "ecommerce_probability + cart_abandonment_probability cannot exceed "
                        f"the non-bounce share {room:.2f}",
                    )
                )

        _check_mix(problems, self, "device_mix", DEVICES)
        _check_mix(problems, self, "persona_mix", PERSONAS)
        _check_mix(problems, self, "channel_mix", CHANNELS)
        if self.daily_curve not in DAILY_CURVES:
            add(("daily_curve", f"must be one of {', '.join(DAILY_CURVES)}"))
        if self.campaign_param_style not in CAMPAIGN_PARAM_STYLES:
            add(("campaign_param_style", f"must be one of {', '.join(CAMPAIGN_PARAM_STYLES)}"))
        for name in ("randomize_countries", "page_performance", "client_hints"):
            if not isinstance(getattr(self, name), bool):
                add((name, "must be true or false"))

        self._validate_ecommerce(problems)

        if not isinstance(self.currency, str) or not _CURRENCY.match(self.currency):
            add(("currency", "must be a three-letter ISO 4217 code in capitals, e.g. SEK"))
        try:
            resolve_timezone(self.timezone)
        except ValueError:
            add(
                (
                    "timezone",
                    f"{self.timezone!r} is not a known time zone (use an IANA name such as Europe/Stockholm, or UTC+2)",
                )
            )
        return problems

    def _validate_ecommerce(self, problems: list[tuple[str, str]]) -> None:
        add = problems.append
        low, high = self.ecommerce_order_value_min, self.ecommerce_order_value_max
        for name, value in (("ecommerce_order_value_min", low), ("ecommerce_order_value_max", high)):
            if not isinstance(value, Decimal) or not value.is_finite():
                add((name, "must be a decimal amount such as 49.90"))
            elif value <= 0:
                add((name, "must be greater than 0"))
            elif value != value.quantize(Decimal("0.01")):
                add((name, "must have at most two decimals"))
        _check_int(problems, self, "ecommerce_items_min", 1, 100)
        _check_int(problems, self, "ecommerce_items_max", 1, 100)
        _check_ordered(problems, self, "ecommerce_items_min", "ecommerce_items_max")
        rate = self.ecommerce_tax_rate
        if not isinstance(rate, Decimal) or not rate.is_finite() or not 0 <= rate <= 1:
            add(("ecommerce_tax_rate", "must be a decimal between 0 and 1 (0.25 is 25%)"))
        options = self.ecommerce_shipping_options
        if not isinstance(options, tuple) or not options:
            add(("ecommerce_shipping_options", "must list at least one amount, e.g. 0, 4.99"))
        elif not all(isinstance(o, Decimal) and o.is_finite() and o >= 0 for o in options):
            add(("ecommerce_shipping_options", "every option must be an amount of 0 or more"))
        ok = [v for v in (low, high) if isinstance(v, Decimal) and v.is_finite() and v > 0]
        if len(ok) == 2 and low > high:
            add(("ecommerce_order_value_max", "must be at least ecommerce_order_value_min"))
        items_max = self.ecommerce_items_max
        if len(ok) == 2 and isinstance(items_max, int) and isinstance(rate, Decimal) and rate.is_finite() and rate >= 0:
            # The subtotal is at least half the smallest order over (1 + tax), and
            # every unit must cost at least a cent (up to 3 units per line).
            smallest_subtotal = low / 2 / (1 + rate)
            if smallest_subtotal * 100 < items_max * 3:
                add(
                    (
                        "ecommerce_order_value_min",
                        f"is too small for orders of up to {items_max} items (every item must cost at least 0.01)",
                    )
                )


def _to_decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            return value
    return value


def _to_decimal_tuple(value: Any) -> Any:
    if isinstance(value, str):
        value = [part for part in value.replace(";", ",").split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return tuple(_to_decimal(item) for item in value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


Problems = list[tuple[str, str]]  # (field, message)


def _check_number(problems: Problems, profile: Profile, name: str, low: float, high: float) -> None:
    value = getattr(profile, name)
    if not _is_number(value):
        problems.append((name, "must be a number"))
    elif not low <= value <= high:
        problems.append((name, f"must be between {low:g} and {high:g}"))


def _check_int(problems: Problems, profile: Profile, name: str, low: int, high: int) -> None:
    value = getattr(profile, name)
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append((name, "must be a whole number"))
    elif not low <= value <= high:
        problems.append((name, f"must be between {low:,} and {high:,}"))


def _check_ordered(problems: Problems, profile: Profile, low_name: str, high_name: str) -> None:
    low, high = getattr(profile, low_name), getattr(profile, high_name)
    if _is_number(low) and _is_number(high) and low > high:
        problems.append((high_name, f"must be at least {low_name} ({low:g})"))


def _check_mix(problems: Problems, profile: Profile, name: str, keys: Sequence[str]) -> None:
    mix = getattr(profile, name)
    if not isinstance(mix, Mapping):
        problems.append((name, f"must map {', '.join(keys)} to shares"))
        return
    unknown = sorted(set(mix) - set(keys))
    if unknown:
        problems.append((name, f"unknown key(s) {', '.join(map(str, unknown))}; use {', '.join(keys)}"))
        return
    values = list(mix.values())
    if not all(_is_number(v) and v >= 0 for v in values):
        problems.append((name, "every share must be a number of 0 or more"))
        return
    total = sum(values)
    if abs(total - 1.0) > MIX_TOLERANCE:
        problems.append((name, f"shares must add up to 1 (they add up to {total:.3f})"))
