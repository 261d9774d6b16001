"""Funnels: ordered journeys that a fixed share of all visits follows.

Shares are exact: funnels are laid out side by side on [0, 1) (by descending priority,
then name) and ONE uniform draw per visit picks the funnel, so funnel A with share 0.10
and B with 0.05 get 10% and 5% of all visits, and the remaining 85% are ordinary visits.
A total above 1 is an error. Priority changes only which visits follow which funnel,
never how many.

A funnel visit is an ordinary visit (same visitor, device, channel and time rhythm)
whose hits are the funnel's steps. It starts at its first step (that step's delay is
ignored: a visit starts with its first hit); before each later step it waits a delay
drawn from [delay_min, delay_max]; after each step it continues with that step's
``continue_probability`` or ends there (a non-bounce visit that ends gets a ping so the
last page has a time on page). Delays are capped at 30 minutes because a longer pause
ends the visit in Matomo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from random import Random
from types import MappingProxyType
from typing import Any

from .rules import is_absolute_url

MAX_DELAY_SECONDS = 1800.0
SHARE_TOLERANCE = 1e-9

# kind -> (required params, optional params)
STEP_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pageview": (("url",), ("title",)),
    "search": (("keyword",), ("category", "count")),
    "event": (("category", "action"), ("name", "value")),
    "outlink": (("url",), ()),
    "download": (("url",), ()),
    "goal": (("idgoal",), ("revenue",)),
    "product_view": (("sku", "name"), ("category", "price", "url", "title")),
    "cart_update": (("items",), ()),
    "order": (("items",), ("revenue", "shipping", "tax", "discount")),
    "content_impression": (("name",), ("piece", "target")),
    "content_interaction": (("name",), ("piece", "target", "interaction")),
}


@dataclass(frozen=True)
class FunnelStep:
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    delay_min: float = 0.0  # seconds before this step (ignored for the first step)
    delay_max: float = 0.0
    continue_probability: float = 1.0  # of going on to the next step

    def __post_init__(self) -> None:
        if not isinstance(self.params, MappingProxyType) and isinstance(self.params, Mapping):
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    # Convenience constructors; `timing` takes delay_min, delay_max, continue_probability.
    @classmethod
    def pageview(cls, url: str, title: str = "", **timing: Any) -> FunnelStep:
        return cls("pageview", {"url": url, "title": title}, **timing)

    @classmethod
    def search(cls, keyword: str, category: str = "", count: int | None = None, **timing: Any) -> FunnelStep:
        return cls("search", {"keyword": keyword, "category": category, "count": count}, **timing)

    @classmethod
    def event(cls, category: str, action: str, name: str = "", value: float | None = None, **timing: Any) -> FunnelStep:
        return cls("event", {"category": category, "action": action, "name": name, "value": value}, **timing)

    @classmethod
    def outlink(cls, url: str, **timing: Any) -> FunnelStep:
        return cls("outlink", {"url": url}, **timing)

    @classmethod
    def download(cls, url: str, **timing: Any) -> FunnelStep:
        return cls("download", {"url": url}, **timing)

    @classmethod
    def goal(cls, idgoal: int, revenue: Any = None, **timing: Any) -> FunnelStep:
        return cls("goal", {"idgoal": idgoal, "revenue": revenue}, **timing)

    @classmethod
    def product_view(
        cls, sku: str, name: str, category: str = "", price: Any = None, url: str = "", **timing: Any
    ) -> FunnelStep:
        return cls(
            "product_view", {"sku": sku, "name": name, "category": category, "price": price, "url": url}, **timing
        )

    @classmethod
    def cart_update(cls, items: Sequence[Any], **timing: Any) -> FunnelStep:
        return cls("cart_update", {"items": list(items)}, **timing)

    @classmethod
    def order(
        cls,
        items: Sequence[Any],
        revenue: Any = None,
        shipping: Any = None,
        tax: Any = None,
        discount: Any = None,
        **timing: Any,
    ) -> FunnelStep:
        return cls(
            "order",
            {"items": list(items), "revenue": revenue, "shipping": shipping, "tax": tax, "discount": discount},
            **timing,
        )

    @classmethod
    def content_impression(cls, name: str, piece: str = "", target: str = "", **timing: Any) -> FunnelStep:
        return cls("content_impression", {"name": name, "piece": piece, "target": target}, **timing)

    @classmethod
    def content_interaction(
        cls, name: str, piece: str = "", target: str = "", interaction: str = "click", **timing: Any
    ) -> FunnelStep:
        return cls(
            "content_interaction",
            {"name": name, "piece": piece, "target": target, "interaction": interaction},
            **timing,
        )

    def value(self, name: str, default: Any = None) -> Any:
        value = self.params.get(name)
        return default if value is None or value == "" else value

    def validate(self, number: int = 1) -> list[tuple[str, str]]:
        """Problems as (field, message); ``number`` is the 1-based step position."""
        where = f"steps[{number - 1}]"
        label = f"Step {number} ({self.kind})"
        if self.kind not in STEP_KINDS:
            return [(f"{where}.kind", f"Step {number}: unknown kind {self.kind!r}; use one of {', '.join(STEP_KINDS)}")]
        problems: list[tuple[str, str]] = []
        add = problems.append
        required, optional = STEP_KINDS[self.kind]
        if not isinstance(self.params, Mapping):
            return [(f"{where}.params", f"{label}: params must be an object")]
        unknown = sorted(set(self.params) - set(required) - set(optional))
        if unknown:
            add((f"{where}.params", f"{label}: unknown parameter(s) {', '.join(unknown)}"))
        for name in required:
            if self.value(name) is None:
                add((f"{where}.{name}", f"{label}: {name} is required"))
        for check in _KIND_CHECKS.get(self.kind, ()):
            message = check(self)
            if message:
                add((f"{where}.params", f"{label}: {message}"))
        for name in ("delay_min", "delay_max"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= MAX_DELAY_SECONDS:
                add(
                    (
                        f"{where}.{name}",
                        f"{label}: {name} must be between 0 and "
                        f"{MAX_DELAY_SECONDS:g} seconds (a 30-minute pause ends "
                        "the visit)",
                    )
                )
        if _is_number(self.delay_min) and _is_number(self.delay_max) and self.delay_min > self.delay_max:
            add((f"{where}.delay_max", f"{label}: delay_max must be at least delay_min"))
        p = self.continue_probability
        if not _is_number(p) or not 0 <= p <= 1:
            add((f"{where}.continue_probability", f"{label}: continue_probability must be between 0 and 1"))
        return problems


@dataclass(frozen=True)
class FunnelSpec:
    name: str
    share: float  # of ALL visits, 0..1
    steps: tuple[FunnelStep, ...]
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))

    def expected_reach(self) -> list[float]:
        """Share of this funnel's visits that reach each step."""
        reach, result = 1.0, []
        for step in self.steps:
            result.append(reach)
            reach *= step.continue_probability
        return result

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append(("name", "A funnel needs a name"))
        if not _is_number(self.share) or not 0 <= self.share <= 1:
            problems.append(("share", f"Funnel {self.name!r}: share must be between 0 and 1"))
        if not self.steps:
            problems.append(("steps", f"Funnel {self.name!r}: add at least one step"))
        for number, step in enumerate(self.steps, start=1):
            if not isinstance(step, FunnelStep):
                problems.append((f"steps[{number - 1}]", f"Step {number} is not a FunnelStep"))
            else:
                problems.extend(step.validate(number))
        return problems


def validate_funnels(funnels: Sequence[FunnelSpec]) -> list[tuple[str, str]]:
    """Problems of each funnel, plus the total share across funnels."""
    problems = []
    names = set()
    for spec in funnels:
        problems.extend(spec.validate())
        if spec.name in names:
            problems.append(("name", f"Two funnels are named {spec.name!r}"))
        names.add(spec.name)
    total = sum(s.share for s in funnels if _is_number(s.share))
    if total > 1 + SHARE_TOLERANCE:
        problems.append(
            ("share", f"Funnel shares add up to {total:.3f}; together they can take at most all visits (1.0)")
        )
    return problems


class FunnelPartition:
    """Maps one uniform draw to a funnel (or None for an ordinary visit)."""

    def __init__(self, funnels: Sequence[FunnelSpec]):
        ordered = sorted((f for f in funnels if f.share > 0), key=lambda f: (-f.priority, f.name))
        self.funnels = tuple(ordered)
        bounds, total = [], 0.0
        for spec in ordered:
            total += spec.share
            bounds.append(total)
        self.bounds = bounds
        self.total = total

    def pick(self, u: float) -> FunnelSpec | None:
        if u >= self.total:
            return None
        for spec, bound in zip(self.funnels, self.bounds, strict=True):
            if u < bound:
                return spec
        return None


@dataclass(frozen=True)
class FunnelSimulation:
    funnel: str
    journeys: int
    reach: list[int]  # journeys that reached each step
    expected_reach: list[float]  # product of continue probabilities

    @property
    def reach_rates(self) -> list[float]:
        return [count / self.journeys if self.journeys else 0.0 for count in self.reach]


def simulate_funnel(spec: FunnelSpec, n: int, seed: int | str = 0) -> FunnelSimulation:
    """Run ``n`` journeys through the continue probabilities (for a preview page)."""
    rng = Random(f"funnel-preview:{seed}:{spec.name}")
    random = rng.random
    reach = [0] * len(spec.steps)
    probabilities = [s.continue_probability for s in spec.steps]
    for _ in range(n):
        for index, probability in enumerate(probabilities):
            reach[index] += 1
            if random() >= probability:
                break
    return FunnelSimulation(spec.name, n, reach, spec.expected_reach())


# ------------------------------------------------------------------ per-kind checks


StepCheck = Callable[["FunnelStep"], str | None]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _location_check(name: str, absolute_only: bool = False) -> StepCheck:
    def check(step: FunnelStep) -> str | None:
        value = step.value(name)
        if value is None:
            return None
        if isinstance(value, str) and is_absolute_url(value):
            return None
        if not absolute_only and isinstance(value, str) and value.startswith("/"):
            return None
        extra = "" if absolute_only else " (or a path starting with '/')"
        return f"{name} {value!r} is not an absolute http(s) URL{extra}"

    return check


def _amount(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"{value!r} must be an amount of 0 or more with at most two decimals")
    return amount


def parse_items(raw: Any) -> list[tuple[str, str, str, Decimal, int]]:
    """Cart/order items from [[sku, name, category, price, qty]] or objects."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("items must be a non-empty list")
    items = []
    for number, item in enumerate(raw, start=1):
        if isinstance(item, Mapping):
            item = [
                item.get("sku"),
                item.get("name"),
                item.get("category", ""),
                item.get("price"),
                item.get("quantity", item.get("qty", 1)),
            ]
        if not isinstance(item, (list, tuple)) or len(item) != 5:
            raise ValueError(f"item {number} must be [sku, name, category, price, quantity]")
        sku, name, category, price, quantity = item
        if not sku or not name:
            raise ValueError(f"item {number} needs a sku and a name")
        try:
            amount = _amount(price)
        except ValueError as error:
            raise ValueError(f"item {number} price {error}") from None
        if amount is None or amount <= 0:
            raise ValueError(f"item {number} price must be greater than 0")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
            raise ValueError(f"item {number} quantity must be a whole number of 1 or more")
        items.append((str(sku), str(name), str(category or ""), amount, quantity))
    return items


def _items_check(step: FunnelStep) -> str | None:
    try:
        parse_items(step.value("items"))
    except ValueError as error:
        return str(error)
    return None


def _order_check(step: FunnelStep) -> str | None:
    try:
        items = parse_items(step.value("items"))
        amounts = {n: _amount(step.value(n)) for n in ("revenue", "shipping", "tax", "discount")}
    except ValueError as error:
        return str(error)
    subtotal = sum(price * qty for _, _, _, price, qty in items)
    shipping = amounts["shipping"] or Decimal(0)
    discount = amounts["discount"] or Decimal(0)
    revenue, tax = amounts["revenue"], amounts["tax"]
    if revenue is not None and tax is not None:
        if subtotal + tax + shipping - discount != revenue:
            return (
                f"revenue {revenue} must equal subtotal {subtotal} + tax {tax} + shipping "
                f"{shipping} - discount {discount}"
            )
    elif revenue is not None and revenue - subtotal - shipping + discount < 0:
        return f"revenue {revenue} is less than subtotal {subtotal} + shipping {shipping} - discount {discount}"
    elif subtotal + (tax or 0) + shipping - discount <= 0:
        return "the order total must be greater than 0"
    return None


def _number_check(name: str, whole: bool = False, low: float | None = None) -> StepCheck:
    def check(step: FunnelStep) -> str | None:
        value = step.value(name)
        if value is None:
            return None
        if whole and (not isinstance(value, int) or isinstance(value, bool)):
            return f"{name} must be a whole number"
        if not whole:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return f"{name} {value!r} is not a number"
        if low is not None and value < low:
            return f"{name} must be {low:g} or more"
        return None

    return check


def _amount_check(name: str) -> StepCheck:
    def check(step: FunnelStep) -> str | None:
        try:
            _amount(step.value(name))
        except ValueError as error:
            return f"{name} {error}"
        return None

    return check


_KIND_CHECKS = {
    "pageview": (_location_check("url"),),
    "search": (_number_check("count", whole=True, low=0),),
    "event": (_number_check("value"),),
    "outlink": (_location_check("url", absolute_only=True),),
    "download": (_location_check("url"),),
    "goal": (_number_check("idgoal", whole=True, low=1), _amount_check("revenue")),
    "product_view": (_amount_check("price"), _location_check("url")),
    "cart_update": (_items_check,),
    "order": (_order_check,),
    "content_impression": (_location_check("target"),),
    "content_interaction": (_location_check("target"),),
}
